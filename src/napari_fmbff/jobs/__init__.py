"""Files in, files out: what `fmbff segment` and dask workers run, resumable large outputs, the cluster."""
