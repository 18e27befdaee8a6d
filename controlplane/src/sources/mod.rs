//! Sources of the desired state: watchers that notice a new config and ask the plane to load it.

pub mod file;
pub mod kubernetes;
