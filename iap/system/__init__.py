"""Process plumbing below everything else: storage URLs, the runtime device, profiling, quiet libraries, children that die with their parent, multi-process launch."""
