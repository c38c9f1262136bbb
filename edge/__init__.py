"""The drone side: photo source -> encoder backend -> spool -> MQTT publisher."""
