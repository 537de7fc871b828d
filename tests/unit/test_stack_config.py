"""Pure checks of the local stack: generated configs, pid files and states (no services run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from citystream.settings import DbSettings, KafkaSettings, MqttSettings, Settings
from citystream.stack import kafka, mosquitto, postgres, process, supervisor

REPO = Path(__file__).resolve().parents[2]


def make_settings(tmp_path: Path, **mqtt: Any) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        kafka=KafkaSettings(port=29092, controller_port=29093, heap="256m"),
        mqtt=MqttSettings(port=21883, **mqtt),
        db=DbSettings(port=25432, user="cs_admin", name="citydb"),
    )


def props(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_kafka_server_properties(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    p = props(kafka.render_server_properties(s))
    assert p["process.roles"] == "broker,controller"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert p["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29092"
    assert p["controller.quorum.voters"] == "1@127.0.0.1:29093"
    assert p["log.dirs"] == str((tmp_path / "state" / "kafka" / "data").resolve())
    assert p["offsets.topic.replication.factor"] == "1"
    assert p["transaction.state.log.replication.factor"] == "1"
    assert p["auto.create.topics.enable"] == "false"
    assert p["group.initial.rebalance.delay.ms"] == "0"


def test_kafka_command_and_missing_jars(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    argv = kafka.KafkaService(s).argv()
    assert "-Xmx256m" in argv
    assert argv[-2:] == ["kafka.Kafka", str(kafka.KafkaPaths.of(s).config)]
    assert f"{tmp_path / 'cache'}/kafka-{kafka.KAFKA_VERSION}/libs/*" in argv
    with pytest.raises(RuntimeError, match=r"infra/install\.sh"):
        kafka.require_libs(s)


def test_kafka_version_matches_pom() -> None:
    pom = (REPO / "infra" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match is not None
    assert match.group(1) == kafka.KAFKA_VERSION


def test_kafka_cluster_id_is_22_char_base64url_never_led_by_a_dash() -> None:
    # 1 in 64 base64url UUIDs start with '-', which kafka-storage reads as an option: in
    # 2,000 ids about 31 would, without the check
    ids = [kafka.new_cluster_id() for _ in range(2000)]
    assert all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid) for cid in ids)


def test_mosquitto_config_defaults(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    conf = mosquitto.render_config(s)
    lines = set(conf.splitlines())
    assert "listener 21883 127.0.0.1" in lines
    assert "allow_anonymous true" in lines
    assert "persistence true" in lines
    assert f"persistence_location {(tmp_path / 'state' / 'mosquitto' / 'data').resolve()}/" in lines
    assert "max_queued_messages 100000" in lines
    assert not any(line.startswith(("password_file", "acl_file")) for line in lines)
    assert "$" not in conf.replace("$name", "")  # every placeholder filled


def test_mosquitto_config_auth_files(tmp_path: Path) -> None:
    s = make_settings(
        tmp_path,
        allow_anonymous=False,
        password_file=tmp_path / "passwd",
        acl_file=tmp_path / "acl",
    )
    lines = set(mosquitto.render_config(s).splitlines())
    assert "allow_anonymous false" in lines
    assert f"password_file {tmp_path / 'passwd'}" in lines
    assert f"acl_file {tmp_path / 'acl'}" in lines


def test_postgres_conf(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    conf = postgres.render_conf(s)
    assert "port = '25432'" in conf
    assert "listen_addresses = '127.0.0.1'" in conf
    assert "shared_preload_libraries = 'timescaledb'" in conf
    assert "timescaledb.telemetry_level = 'off'" in conf
    sock = (tmp_path / "state" / "run" / "pg").resolve()
    assert f"unix_socket_directories = '{sock}'" in conf


def test_postgres_socket_dir_dropped_when_path_too_long(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 90)
    s = Settings(state_dir=deep, cache_dir=tmp_path)
    assert postgres.socket_dirs(s) == ""


def test_postgres_runs_unprivileged_with_one_capability() -> None:
    prefix = postgres.privilege_prefix("citystream")
    assert "--reuid=citystream" in prefix
    assert "--ambient-caps=+dac_read_search" in prefix
    assert prefix[-1] == "--"


def test_service_order_and_paths(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    assert [svc.name for svc in supervisor.services(s)] == ["postgres", "mosquitto", "kafka"]
    state = (tmp_path / "state").resolve()
    assert supervisor.log_path(s, "kafka") == state / "logs" / "kafka.log"
    with pytest.raises(RuntimeError, match="unknown service"):
        supervisor.log_path(s, "redis")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_crashed_when_pidfile_outlives_process(tmp_path: Path) -> None:
    s = make_settings(tmp_path)
    files = mosquitto.MosquittoService(s).files()
    files.pidfile.parent.mkdir(parents=True)
    pid = dead_pid()
    files.pidfile.write_text(f"{pid}\n")
    statuses = {st.name: st for st in supervisor.status(s)}
    assert statuses["mosquitto"].state == "crashed"
    assert statuses["mosquitto"].pid == pid


def test_pid_of_unrelated_process_is_not_ours(tmp_path: Path) -> None:
    files = process.ProcessFiles.under(tmp_path, "svc", marker=str(tmp_path / "svc.conf"))
    files.pidfile.parent.mkdir(parents=True)
    files.pidfile.write_text("1\n")  # alive, but its command line lacks our marker
    assert process.owned_pid(files) is None
    assert process.process_state(files, "127.0.0.1", 1)[0] == "crashed"


def test_spawn_state_and_stop(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    files = process.ProcessFiles.under(tmp_path, "sleeper", marker=marker)
    argv = [
        sys.executable,
        "-c",
        "import sys, time; print('hi', flush=True); time.sleep(60)",
        marker,
    ]
    pid = process.spawn(files, argv)
    process.wait_ready(files, pid, lambda: "hi" in files.log.read_text(), 10, "prints hi")
    assert process.process_state(files, "127.0.0.1", 1) == ("running", pid)
    assert process.stop(files, timeout=10)
    assert not files.pidfile.exists()
    assert process.process_state(files, "127.0.0.1", 1) == ("stopped", None)


def test_wait_ready_reports_log_tail_when_child_dies(tmp_path: Path) -> None:
    files = process.ProcessFiles.under(tmp_path, "boom", marker="boom")
    argv = [sys.executable, "-c", "import sys; print('bad config line 3'); sys.exit(2)", "boom"]
    pid = process.spawn(files, argv)
    with pytest.raises(RuntimeError, match="bad config line 3"):
        process.wait_ready(files, pid, lambda: False, 10, "never")


def test_external_settings_are_not_started(tmp_path: Path) -> None:
    s = Settings(
        state_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers="k1:9092,k2:9092"),
        mqtt=MqttSettings(external=True),
        db=DbSettings(external=True),
    )
    assert {st.state for st in supervisor.status(s)} == {"external"}
