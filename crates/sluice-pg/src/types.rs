//! Type definitions read from `pg_type` into a [`TypeRegistry`], so values of any type
//! (arrays, domains, enums, extension types) convert to the change record's JSON mapping.

use crate::error::PgError;
use crate::values::TypeRegistry;
use crate::wire::Connection;

/// Records the catalog rows of type OIDs the registry does not know yet, following array
/// elements and domain base types.
pub async fn resolve_types(
    conn: &mut Connection,
    types: &mut TypeRegistry,
    oids: Vec<u32>,
) -> Result<(), PgError> {
    let mut pending: Vec<u32> = oids.into_iter().filter(|o| !types.knows(*o)).collect();
    for _ in 0..8 {
        if pending.is_empty() {
            break;
        }
        let list = pending
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let rows = conn
            .query(&format!(
                "SELECT oid, typtype, typcategory, typelem, typbasetype, typdelim FROM pg_type \
                 WHERE oid IN ({list})"
            ))
            .await?;
        let mut next = Vec::new();
        let mut found = std::collections::HashSet::new();
        for r in rows {
            let num = |i: usize| {
                r.get(i)
                    .cloned()
                    .flatten()
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            };
            let byte = |i: usize| {
                r.get(i)
                    .cloned()
                    .flatten()
                    .and_then(|v| v.bytes().next())
                    .unwrap_or(b'b')
            };
            let (oid, elem, base) = (num(0), num(3), num(4));
            types.record(oid, byte(1), byte(2), elem, base, byte(5));
            found.insert(oid);
            for dep in [elem, base] {
                if dep != 0 && !types.knows(dep) {
                    next.push(dep);
                }
            }
        }
        for oid in pending {
            if !found.contains(&oid) {
                // Unknown to the catalog (dropped meanwhile): its text form will do.
                types.record(oid, b'b', b'U', 0, 0, b',');
            }
        }
        pending = next;
    }
    Ok(())
}
