//! The store client (spec §5): the index, manifests and compose templates
//! over http(s) or file://, with size and time limits, and the index cached
//! in memory and on disk.
