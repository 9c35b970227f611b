//! The catalog service (the seed's Server B): products, prices and stock.
//!
//! [`domain`] holds the rules (stock never negative, reservations idempotent per order);
//! [`projection`] keeps the `catalog_products` read model.

pub mod domain;
pub mod projection;
pub mod queries;

pub use domain::{CatalogRejection, Product};
pub use projection::ProductsProjection;
pub use queries::CatalogQueries;
