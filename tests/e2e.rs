//! End-to-end tests: real nginx, the CNCF distribution registry, docker, skopeo and podman.

pub mod harness;
pub mod stack;

mod docker;
mod paths;
mod skopeo_podman;
