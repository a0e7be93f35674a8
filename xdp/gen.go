package xdp

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -cflags "-O2 -g -Wall -Werror -mcpu=v3" -go-package xdp weirXDP ../bpf/xdp_lb.c -- -I../bpf/include -I/usr/include/x86_64-linux-gnu
