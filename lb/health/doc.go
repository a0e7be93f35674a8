// Package health actively probes the backends of services that carry an
// lb.HealthCheck and quarantines the ones that fail.
//
// A Checker runs one goroutine per probed (service, backend) pair, the
// target. Set says which services to probe; targets that stay keep their
// state, new ones start, removed ones stop. Only lb.BackendActive backends
// are probed: a terminating backend takes no new flows anyway.
//
// Probes: "tcp" connects to the backend's address and the check's port (the
// backend's port when the check has none) and closes at once; "http" sends
// GET http://address:port/path and is healthy on a 2xx or 3xx answer
// (redirects are not followed; no proxy from the environment is used; a
// new connection per probe, so a probe tests the backend, not a pooled
// connection). Each probe gives up after the check's timeout. Probes leave
// from the agent's own network namespace with the host's routing, like any
// socket the agent opens: no special handling.
//
// Thresholds: a new target starts healthy, so a new or reloaded config
// never black-holes traffic before its first probe; it becomes quarantined
// after Fall consecutive failed probes, and healthy again after Rise
// consecutive successes. The first probe of a target comes after a random
// part of its interval, so that a config with many backends doesn't probe
// them all in the same instant.
//
// Apply rewrites a desired set of services for the datapath: it returns
// copies in which every active backend whose target is unhealthy is
// lb.BackendQuarantined. onChange (given to New) is called whenever a
// target flips between healthy and unhealthy, so the agent can run Apply
// again and re-sync; it is called from probe goroutines, possibly several
// at once, and should only queue the work (e.g. request a sync). Status
// reports every target for metrics and inspection.
package health
