//! The Redis command table (placeholder until generated).
