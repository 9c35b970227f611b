//! The catalog service's contract (the seed's Server B): products, prices and stock.
//!
//! One product is one stream, `catalog.product-{product_id}`. Reservations are keyed by
//! order so that the order saga can retry any step without double effects.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::values::{Money, OrderId, ProductId, ProductName, Quantity, StockLevel, StreamId};

/// The stream category of products.
pub const PRODUCT_STREAM_CATEGORY: &str = "catalog.product";

impl ProductId {
    /// The stream that holds this product's events.
    pub fn stream_id(&self) -> StreamId {
        StreamId::new(PRODUCT_STREAM_CATEGORY, self)
    }
}

/// Adds a new product with its price and initial stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProduct {
    pub product_id: ProductId,
    pub name: ProductName,
    pub price: Money,
    pub initial_stock: StockLevel,
}

/// Sets a product's price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    pub product_id: ProductId,
    pub price: Money,
}

/// Adds items to a product's available stock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// Sets items aside for an order. Idempotent per order: asking again for the same order and
/// quantity changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveStock {
    pub product_id: ProductId,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

/// Returns an order's reserved items to available stock (compensation). Idempotent; releasing
/// an order that holds nothing closes it, so a late reservation for it is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseReservation {
    pub product_id: ProductId,
    pub order_id: OrderId,
}

/// Turns an order's reservation into a sale (the order was paid). Idempotent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitReservation {
    pub product_id: ProductId,
    pub order_id: OrderId,
}

wire_enum! {
    /// Every command the catalog accepts.
    pub enum CatalogCommand {
        AddProduct(AddProduct) = "catalog.add_product",
        ChangePrice(ChangePrice) = "catalog.change_price",
        Restock(Restock) = "catalog.restock",
        ReserveStock(ReserveStock) = "catalog.reserve_stock",
        ReleaseReservation(ReleaseReservation) = "catalog.release_reservation",
        CommitReservation(CommitReservation) = "catalog.commit_reservation",
    }
}

impl CatalogCommand {
    /// The product this command is about.
    pub fn product_id(&self) -> &ProductId {
        match self {
            Self::AddProduct(c) => &c.product_id,
            Self::ChangePrice(c) => &c.product_id,
            Self::Restock(c) => &c.product_id,
            Self::ReserveStock(c) => &c.product_id,
            Self::ReleaseReservation(c) => &c.product_id,
            Self::CommitReservation(c) => &c.product_id,
        }
    }
}

/// Asks for every product with its price and stock (the products read model).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListProducts {}

wire_enum! {
    /// The catalog's queries, answered from its read model.
    pub enum CatalogQuery {
        ListProducts(ListProducts) = "catalog.query.list_products",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductAdded {
    pub product_id: ProductId,
    pub name: ProductName,
    pub price: Money,
    pub initial_stock: StockLevel,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PriceChanged {
    pub product_id: ProductId,
    pub price: Money,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Restocked {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub product_id: ProductId,
    pub order_id: OrderId,
    pub quantity: Quantity,
    /// The price at reservation time: what the order pays per item.
    pub unit_price: Money,
}

/// `quantity` is 0 when the order held nothing: the release only closed the order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationReleased {
    pub product_id: ProductId,
    pub order_id: OrderId,
    pub quantity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationCommitted {
    pub product_id: ProductId,
    pub order_id: OrderId,
    pub quantity: Quantity,
}

wire_enum! {
    /// Every event the catalog records.
    pub enum CatalogEvent {
        ProductAdded(ProductAdded) = "catalog.product_added",
        PriceChanged(PriceChanged) = "catalog.price_changed",
        Restocked(Restocked) = "catalog.restocked",
        StockReserved(StockReserved) = "catalog.stock_reserved",
        ReservationReleased(ReservationReleased) = "catalog.reservation_released",
        ReservationCommitted(ReservationCommitted) = "catalog.reservation_committed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Contract, DecodeError};

    #[test]
    fn decodes_a_command_by_its_wire_name() {
        let body = br#"{"product_id":"tea","name":"Tea","price":350,"initial_stock":10}"#;
        let command = CatalogCommand::decode("catalog.add_product", body).unwrap();
        assert_eq!(command.message_type(), "catalog.add_product");
        assert_eq!(command.product_id().as_str(), "tea");
        let round_trip = CatalogCommand::decode(
            command.message_type(),
            command.to_json().to_string().as_bytes(),
        )
        .unwrap();
        assert_eq!(round_trip, command);
    }

    #[test]
    fn unknown_fields_and_types_are_refused_with_a_reason() {
        let body = br#"{"product_id":"tea","price":1,"colour":"red"}"#;
        let err = CatalogCommand::decode("catalog.change_price", body).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
        let err = CatalogCommand::decode("catalog.restock", br#"["tea", 1]"#).unwrap_err();
        assert!(err.to_string().contains("JSON array"), "{err}");
        let err = CatalogCommand::decode("catalog.restock", b"null").unwrap_err();
        assert!(err.to_string().contains("invalid type: null"), "{err}");
        let err = CatalogCommand::decode("catalog.delete_everything", b"{}").unwrap_err();
        assert!(matches!(err, DecodeError::UnknownMessageType { .. }));
        assert!(err.to_string().contains("catalog.reserve_stock"), "{err}");
    }
}
