"""Energy stream processing: meter readings to feeder loads, alerts and load forecasts."""
