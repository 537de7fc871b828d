"""Traffic domain logic: calibration, track histories, violation rules, lane counts,
signal-timing advice (Webster) and evidence bundles.  Pure: no broker, DB or HTTP here."""
