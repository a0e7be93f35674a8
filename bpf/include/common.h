/* Includes every program starts with. UAPI headers come from Debian's
 * linux-libc-dev, helpers from libbpf-dev. */
#ifndef WEIR_COMMON_H
#define WEIR_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#endif
