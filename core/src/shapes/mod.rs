//! Procedural shapes world.
