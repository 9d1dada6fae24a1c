//! copy checks what the target holds: garbage manifests and damaged data in the target are replaced, never counted as present.
