// Package rtnl owns weft's conversation with the kernel's networking: the
// rtnetlink socket of a namespace, building and parsing its messages, dumps
// retried when the kernel interrupts them, the batched write path, weft's
// route protocol number, and entering a network namespace. Nothing else in
// weft switches a thread's namespace or writes netlink messages by hand, so
// that the rules for both (threads never left in the wrong namespace, one
// request/answer exchange at a time per socket) are kept in one place.
//
// It imports no "testing": weftd and weftctl link it (the lab of weftctl
// creates namespaces with it), and the test helper netnstest wraps it.
package rtnl
