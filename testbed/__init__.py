"""A local edgefed fleet on one machine: broker, registry, cloudcore, real edge
agents (each optionally in its own network namespace), a fleet simulator for scale,
fault injection and benchmarks. testbed may import anything; nothing imports it."""
