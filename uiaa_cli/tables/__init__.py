"""Tables and outputs: the table type and its CSV/TSV/Parquet/HDF5 readers and writers, format sniffing,
safe atomic outputs, and resumable parts (no torch)."""
