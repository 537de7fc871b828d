"""The edge meter gateway: a data concentrator that batches meter readings to MQTT at QoS 1
through a durable outbox (``citystream edge meter``)."""
