"""MQTT -> Kafka bridge (at least once, PUBACK after Kafka acks).

``create_bridge(settings)`` builds one (see :mod:`edge.bridge.app`); the pure routing
lives in :mod:`edge.bridge.routing`, the ack ordering in :mod:`edge.bridge.acks`.
"""
