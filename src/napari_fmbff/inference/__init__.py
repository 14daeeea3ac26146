"""The engine on arrays: the Segmenter and its settings, tiling and blending, stacks, chunks with halos, post-processing."""
