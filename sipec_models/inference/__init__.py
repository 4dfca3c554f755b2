"""Step runners called by the ``sipec`` command (and so by the Snakemake rules).

Each runner reads its inputs, calls the library, and writes its output
atomically (temporary name, then rename), so a failed job leaves no output.
"""
