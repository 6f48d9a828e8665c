//! value conversion (in progress)
