"""A signalised intersection simulated with SUMO, seen by a virtual camera, with ground truth."""
