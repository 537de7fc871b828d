"""The unified city map: an HTTP API (FastAPI) over TimescaleDB, live updates by SSE from a
Kafka tail, and a static web map (Leaflet + uPlot, bundled, no CDN, no tiles).

Modules::

    params.py    parsing/validation of query parameters (pure)
    auth.py      roles, tokens, what each role may see and do (pure + FastAPI dependency)
    redact.py    what a viewer must not see (pure)
    db.py        async connection pool and the audit write
    queries.py   the SQL behind every read
    models.py    request/response models (the OpenAPI document)
    live.py      Kafka tail -> fan-out hub -> SSE
    publish.py   signal plan -> MQTT (QoS 1)
    routes_*.py  the HTTP endpoints
    app.py       the composition root, :func:`create_app`
    cli.py       ``citystream map``

Nothing runs at import time: :func:`citymap.app.create_app` wires everything from settings.
"""
