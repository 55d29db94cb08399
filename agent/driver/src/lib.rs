//! containerd driver.
