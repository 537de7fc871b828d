"""Edge agents: camera agent, meter gateway agent, durable outbox, MQTT -> Kafka bridge."""
