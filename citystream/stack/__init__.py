"""Local stack supervisor: Kafka (KRaft), Mosquitto and PostgreSQL+TimescaleDB as child
processes under one state directory.  Entry points are in ``citystream.stack.supervisor``."""
