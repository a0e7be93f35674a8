// Package edge is the edge-mode service source: a YAML file that declares
// virtual IPs and their backends, for nodes that load-balance without
// Kubernetes.
//
// # Format
//
//	services:
//	  - name: web                # letters, digits, '.', '_' and '-'; unique in the file
//	    vip: 192.0.2.10          # IPv4 or IPv6
//	    port: 80
//	    protocol: TCP            # TCP | UDP | SCTP            (default TCP)
//	    scope: external          # external | internal         (default external)
//	    mode: dsr                # dsr | snat | hybrid         (default Defaults.Mode)
//	    maglev_table_size: 16381 # default Defaults.MaglevTableSize
//	    source_ranges: [0.0.0.0/0]
//	    session_affinity: {timeout: 3h}   # timeout defaults to 3h
//	    health_check: {type: http, path: /healthz, port: 8081, interval: 2s, timeout: 1s, rise: 2, fall: 3}
//	    backends:
//	      - address: 10.0.1.5
//	        port: 8080           # default: the service's port
//	        tunnel: 10.0.1.5     # DSR outer destination; default: address
//	        weight: 100          # 0-65535, default 1
//
// The top-level services key is required: an empty file is an error, and
// `services: []` serves nothing. That way a file caught half-written, or
// truncated by mistake, never wipes the tables serving traffic.
//
// A health_check needs its type (tcp or http); path applies to http only
// and defaults to "/"; port defaults to each backend's port; interval,
// timeout, rise and fall default to 2s, 1s, 2 and 3. Durations use Go
// syntax (1s, 500ms, 3h).
//
// Each service maps to one lb.Service named lb.ServiceName{Name: name}
// with one frontend of kind lb.KindEdgeVIP; backends are lb.BackendActive.
//
// # Errors
//
// Parsing is strict: unknown and repeated keys, values of the wrong type,
// duplicate service names and two services on the same vip, port and
// protocol are errors, and so is anything lb.Validate rejects. Every
// problem is reported (joined with errors.Join) as an *Error naming the
// file, line, column and key path, for example
//
//	edge.yaml:7:11: services[0].port: 70000 is out of range (use 1-65535)
//
// # Reloading
//
// A Source loads the file once when it starts (a broken file stops the
// agent from starting) and reloads it on SIGHUP, on Reload, and when the
// file changes. Changes are watched with inotify on the file's directory
// (and on the directory of the symlink's target, if it is one), so
// editors that replace the file by renaming and Kubernetes ConfigMap
// volumes, which swap a symlink, are both seen; where inotify is not
// available the file is polled every second. A reload that fails keeps
// the services that were applied before, and LastError reports it until a
// reload succeeds. apply is called only when the parsed services differ
// from the previous ones.
package edge
