//! A repository written before stack ids and predecessor links (a fixture written by the release before them) still lists, restores, verifies and checks, and is adopted by the first backup.

