"""Stream processing apps of CityStream (vision, traffic, energy, sink) and their domain logic."""
