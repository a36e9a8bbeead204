//! BadNets (being written).
