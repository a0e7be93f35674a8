// Package lbtest holds test doubles for package lb, shared by the tests of
// every package that drives a Datapath or a Runner:
//
//   - Fake is an in-memory lb.Datapath. Its String is a deterministic text
//     dump of all tables for golden files, it counts calls per method (a
//     restart that changes nothing must make zero writes), and Check tells
//     whether every reference a lookup can follow resolves.
//   - Faulty wraps any lb.Datapath and fails chosen calls (the n-th, the
//     next calls of a method, or calls matching a predicate) with an error
//     wrapping ErrInjected, without passing them on.
//   - Clock is a manual lb.Clock: time moves only by Advance, and Arms
//     lets a test wait until the code under test is blocked on a timer.
//
// Everything here is safe for concurrent use.
package lbtest
