// Package lb is Weir's control plane: the service model, the datapath
// contract, and the reconciler that programs one into the other.
//
// # Model
//
// A Service is one service port: frontends (address, port, protocol,
// scope, kind) and backends (address, port, weight, state, locality),
// plus the Mode (DSR, SNAT, hybrid), ClientIP affinity, the Local traffic
// policies, source ranges and a Maglev table size. Sources (Kubernetes
// informers, the edge config file) build Services; Validate checks one
// and names every problem with its fix.
//
// # Datapath contract
//
// Datapath is everything the reconciler needs from the maps: upserts and
// deletes of backends, Maglev tables, frontends (reverse NAT), source
// ranges and service keys, and Dump to read it all back. Writes are
// idempotent and deleting a missing key succeeds. Every ServiceID has two
// Maglev tables (TableID: the ID and a generation, 0 or 1); a key's entry
// names the one its packets use (TableGen, beside TableSize). UpsertMaglev
// swaps a new or resized table in atomically and may rewrite a table of
// the same size in place, so it is only ever called for a table no key
// uses. A datapath whose table writes have a fixed cost per call (the BPF
// one maps its slab of tables) also implements MaglevBatcher; the reconciler
// then writes a Sync's tables in batches. A datapath that writes many
// entries for less than one call each implements EntryBatcher; a large
// Sync then writes its backends, frontends and keys in batches, and after
// a failed batch writes the rest one by one, so that each error still
// names its object and fails only its service. The real datapath is
// bpf.Datapath; lb/lbtest has an in-memory Fake and a fault-injecting
// wrapper.
//
// A service becomes up to two views, each with a ServiceID, its backends'
// BackendIDs and two Maglev tables: the internal view (always; the socket
// hooks' choice, InternalTableSize slots, InternalLocal filtering) and
// the external view (when a frontend is external; XDP's choice, the
// service's or the node's table size, ExternalLocal filtering, source
// ranges). Every frontend has a FrontendID and an internal key; an
// external frontend also has an external key. All backends of a view get
// an entry whatever their state, so established flows keep theirs; only
// usable ones fill the table: active with a weight, or if there are none,
// terminating with a weight. With no usable backend the keys say
// Backends=0 (the datapath rejects) and the view has no tables.
//
// # Reconciler
//
// Upsert, Delete and Replace record the desired state and mark what
// changed; they do no datapath I/O. Sync applies what is marked, and only
// that, so its cost follows the change, not the number of services. It
// guarantees:
//
//   - Diffing: each service's applied entries are kept in bookkeeping;
//     only entries that differ are written, so a Sync over unchanged
//     services writes nothing. A Maglev table is rewritten only when its
//     input (or, after a restart, its content) changed.
//   - Make-before-break: per service, backends, then the table, then
//     frontends, source ranges and keys; then stale keys, frontends,
//     source ranges and backends; then stale tables. No write ever makes
//     a reachable entry refer to a missing one.
//   - Double-buffered tables: a view's new table goes into the generation
//     no key uses (in place when its size is unchanged), then each key
//     switches table and size in one write, so a packet never sees a mix
//     of two tables nor a size that doesn't fit its table, whether the
//     table grows or shrinks.
//     A new view gets the same table in both generations, so its first
//     change is already in place. If a failure left keys on both
//     generations, they move to the live one before the other is written.
//     A backend the switch leaves out is retired, not deleted: a program
//     that read the old generation may still pick it, so its entry, its ID
//     and its service's ID stay until the next Sync deletes it first thing
//     (SyncResult.Again asks for that Sync).
//   - Bookkeeping after the write: an entry counts as applied only once
//     its write succeeded; a failed write leaves it to be rewritten. IDs
//     are owned from allocation until the delete of their entry succeeded,
//     so no failure leaks one. IDs are the lowest free, never 0.
//   - Isolation: each service stands alone. The first failure stops that
//     service (leaving its previous entries serving); the others go on.
//   - Restart: NewReconciler adopts the datapath's content (Dump) with its
//     IDs, so the same desired state afterwards makes zero writes, and
//     established connections keep their backend IDs. Entries that belong
//     to no desired service are deleted only after the full desired state
//     arrived (Replace, or MarkSynced after incremental Upserts), never on
//     a partial one.
//   - Conflicts: a frontend key served by one service is refused to a
//     second one (the first keeps serving); when the first releases it,
//     the second takes it over in the same Sync.
//
// # Errors
//
// Sync returns the services' errors joined, each a *ServiceError naming
// the service. Retry is true for datapath failures: the service stays
// marked and the next Sync tries again. An invalid service (wrapping the
// *ValidationError list) or a conflict (wrapping ErrConflict, naming both
// services) is not retried until its desired state changes or the
// conflicting frontend is released; its previously applied state keeps
// serving. SyncResult lists the services written and deleted and the
// backends removed, whose conntrack entries are dead.
//
// # Runner
//
// Runner calls Sync (or any function) with bounded frequency: requests
// collapse, runs are at least a minimum interval apart and at most a
// maximum interval apart, and failures are retried with capped
// exponential backoff. Time comes from an injectable Clock.
package lb
