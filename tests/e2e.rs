//! End-to-end tests: real nginx, the CNCF distribution registry, docker, skopeo and podman.

mod access_keys;
mod docker;
mod paths;
mod skopeo_podman;
