"""The syscall seam: network namespaces, raw sockets, interfaces. Stages get these objects handed in."""
