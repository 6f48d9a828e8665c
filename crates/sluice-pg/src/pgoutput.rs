//! pgoutput decoder (in progress)
