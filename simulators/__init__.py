"""Simulators of CityStream: synthetic smart-meter city, intersections, recorder/replayer."""
