//! Signed means signed, snapshots belong to a stack, and deletion shows.

