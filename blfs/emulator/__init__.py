"""A brainlife-compatible server (auth, warehouse, amaretti) for tests, benchmarks and `blfs demo`.

Nothing in blfs proper imports this package: it is run as a subprocess
(`python -m blfs.emulator generate|serve`) and driven over HTTP (see `control`).
"""
