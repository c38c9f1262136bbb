"""The ground station: MQTT subscriber -> reassembly -> decoder -> archive + catalog -> ack."""
