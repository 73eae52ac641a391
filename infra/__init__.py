"""Dev-stack launchers: a Kafka-compatible broker (Tansu) and anvil, on free loopback ports."""
