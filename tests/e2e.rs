//! End-to-end tests: real nginx, the CNCF distribution registry, docker, skopeo and podman.

mod access_keys;
mod catalog;
mod docker;
mod federated;
mod paths;
mod protected_tags;
mod skopeo_podman;
