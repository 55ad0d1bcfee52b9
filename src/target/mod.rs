//! Device target profiles.
