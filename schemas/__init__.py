"""Wire contracts shared by edge agents, stream processors, simulators and tests."""
