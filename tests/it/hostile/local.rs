//! Opens by the local backend stay inside the repository: symlinks and FIFOs planted there, the lock file included.
