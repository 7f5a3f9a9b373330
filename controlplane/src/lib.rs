//! fsroute control plane.
