"""Side-by-side throughput benchmarks (dpokit vs TRL). Not part of the installed package."""
