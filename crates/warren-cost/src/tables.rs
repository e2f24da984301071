//! The design study's tables, computed from a [`Catalog`].

use std::fmt::Write as _;

use crate::{Catalog, Setup};

/// One price point of the study's first table.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceRow {
    pub class: String,
    pub jpy_per_hour: f64,
    pub jpy_per_month: f64,
    pub position: String,
}

/// One row of the per-hour cost table: what the study quotes and what the
/// catalog derives.
#[derive(Debug, Clone, PartialEq)]
pub struct HourRow {
    pub setup: String,
    pub name: String,
    pub quoted_usd: Option<f64>,
    pub quoted_jpy: Option<f64>,
    /// Gross margin at the table's price from the quoted cost, percent.
    pub quoted_margin_pct: Option<f64>,
    pub derived_usd: f64,
    pub derived_jpy: f64,
    pub derived_margin_pct: f64,
    /// Derived and quoted differ by more than the quote's own rounding.
    pub disagrees: bool,
}

/// One row of the monthly table: dollars per setup, in catalog order.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthRow {
    pub concurrency: u32,
    pub usd: Vec<(String, f64)>,
}

/// The study's worked example: N concurrent on one setup, revenue at a
/// price over the billed month against the 24/7 cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub setup: String,
    pub concurrency: u32,
    pub monthly_usd: f64,
    pub monthly_jpy: f64,
    pub revenue_jpy: f64,
    pub margin_pct: f64,
}

/// One decision criterion: setups in order, best first; equal ones share a rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    pub name: &'static str,
    /// Groups of (setup id or isolation level, label) with equal rank.
    pub order: Vec<Vec<(String, String)>>,
}

impl Criterion {
    pub fn ids(&self) -> Vec<Vec<&str>> {
        self.order.iter().map(|g| g.iter().map(|(id, _)| id.as_str()).collect()).collect()
    }

    pub fn render(&self) -> String {
        self.order
            .iter()
            .map(|g| g.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join(" = "))
            .collect::<Vec<_>>()
            .join(" > ")
    }
}

/// Half a unit in the last decimal a quoted figure was given with.
fn quote_tolerance(q: f64) -> f64 {
    for d in 0..8 {
        let scaled = q * 10f64.powi(d);
        if (scaled - scaled.round()).abs() < 1e-9 {
            return 0.5 * 10f64.powi(-d);
        }
    }
    0.0
}

impl Catalog {
    pub fn price_table(&self) -> Vec<PriceRow> {
        self.classes
            .iter()
            .map(|c| PriceRow {
                class: c.name.clone(),
                jpy_per_hour: c.jpy_per_hour,
                jpy_per_month: c.jpy_per_hour * self.billable_hours_per_month,
                position: c.position.clone(),
            })
            .collect()
    }

    pub fn hour_table(&self, jpy_price: f64) -> Vec<HourRow> {
        self.setups
            .iter()
            .map(|s| {
                let derived = s.usd_per_workspace_hour();
                let q = s.quoted_usd_per_hour;
                HourRow {
                    setup: s.id.clone(),
                    name: s.name.clone(),
                    quoted_usd: q,
                    quoted_jpy: q.map(|q| q * self.jpy_per_usd),
                    quoted_margin_pct: q.map(|q| 100.0 * self.margin(q, jpy_price)),
                    derived_usd: derived,
                    derived_jpy: derived * self.jpy_per_usd,
                    derived_margin_pct: 100.0 * self.margin(derived, jpy_price),
                    disagrees: q.is_some_and(|q| (derived - q).abs() > quote_tolerance(q) + 1e-12),
                }
            })
            .collect()
    }

    /// Gross margin (percent) of every setup at every class price, setups
    /// in catalog order, prices in class order.
    pub fn margin_table(&self) -> Vec<Vec<f64>> {
        self.setups
            .iter()
            .map(|s| {
                self.classes.iter().map(|c| 100.0 * self.margin(s.usd_per_workspace_hour(), c.jpy_per_hour)).collect()
            })
            .collect()
    }

    pub fn month_table(&self) -> Vec<MonthRow> {
        self.concurrency
            .iter()
            .map(|&n| MonthRow {
                concurrency: n,
                usd: self.setups.iter().map(|s| (s.id.clone(), self.monthly_usd(s, n))).collect(),
            })
            .collect()
    }

    pub fn example(&self, setup: &Setup, concurrency: u32, jpy_price: f64) -> Example {
        let monthly_usd = self.monthly_usd(setup, concurrency);
        let monthly_jpy = monthly_usd * self.jpy_per_usd;
        let revenue_jpy = jpy_price * concurrency as f64 * self.billable_hours_per_month;
        Example {
            setup: setup.id.clone(),
            concurrency,
            monthly_usd,
            monthly_jpy,
            revenue_jpy,
            margin_pct: 100.0 * (1.0 - monthly_jpy / revenue_jpy),
        }
    }

    /// The study's decision table, with every order that figures decide
    /// computed from the catalog (the operations and "start today" ranks are
    /// judgements the catalog states).
    pub fn criteria(&self, concurrency: u32, jpy_price: f64) -> Vec<Criterion> {
        let pick = |ids: &[&str]| -> Vec<&Setup> { ids.iter().filter_map(|id| self.setup(id)).collect() };
        let four = pick(&["firecracker-c8i", "ecs-ec2-ri", "fargate", "e2b-pro"]);
        let order = |setups: Vec<&Setup>, key: &dyn Fn(&Setup) -> f64, label: &dyn Fn(&Setup) -> String| {
            let mut v: Vec<(f64, String, String)> = setups.iter().map(|s| (key(s), s.id.clone(), label(s))).collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut groups: Vec<(f64, Vec<(String, String)>)> = Vec::new();
            for (k, id, l) in v {
                match groups.last_mut() {
                    Some((gk, g)) if (*gk - k).abs() < 1e-9 => g.push((id, l)),
                    _ => groups.push((k, vec![(id, l)])),
                }
            }
            groups.into_iter().map(|(_, g)| g).collect::<Vec<_>>()
        };
        let family = |s: &Setup| s.family.clone();
        let fmt_ms = |ms: u64| if ms < 1000 { format!("{ms} ms") } else { format!("{} s", ms / 1000) };
        let start = |s: &Setup| {
            let [lo, hi] = s.start_ms;
            if lo == hi {
                format!("{} ({})", s.family, fmt_ms(lo))
            } else {
                format!("{} ({}-{})", s.family, fmt_ms(lo).trim_end_matches(" s"), fmt_ms(hi))
            }
        };
        let mut isolation: Vec<Vec<(String, String)>> = order(
            pick(&["firecracker-c8i", "e2b-pro", "fargate"]),
            &|s| self.isolation_rank.get(&s.isolation).copied().unwrap_or(u32::MAX) as f64,
            &family,
        );
        // Isolation levels no setup above uses (gVisor, plain containers).
        let mut levels: Vec<(&String, &u32)> = self.isolation_rank.iter().collect();
        levels.sort_by_key(|(_, r)| **r);
        for (level, _) in levels {
            if level != "microvm" {
                let label = if level == "container" { "Docker".to_string() } else { capitalise(level) };
                isolation.push(vec![(level.clone(), label)]);
            }
        }
        vec![
            Criterion {
                name: "can start today",
                order: order(
                    pick(&["ecs-ec2-od", "e2b-pro", "firecracker-c8i"]),
                    &|s| s.available_today as f64,
                    &family,
                ),
            },
            Criterion {
                name: "lowest monthly cost",
                order: order(four.clone(), &|s| self.monthly_usd(s, concurrency), &family),
            },
            Criterion {
                name: "lowest operations",
                order: order(
                    pick(&["e2b-pro", "fargate", "ecs-ec2-od", "firecracker-c8i"]),
                    &|s| s.operations as f64,
                    &family,
                ),
            },
            Criterion {
                name: "start speed",
                order: order(
                    pick(&["firecracker-c8i", "e2b-pro", "ecs-ec2-od", "fargate"]),
                    &|s| s.start_ms[0] as f64,
                    &start,
                ),
            },
            Criterion { name: "isolation strength", order: isolation },
            Criterion {
                name: "profitability at scale",
                order: order(four, &|s| -self.example(s, concurrency, jpy_price).margin_pct, &family),
            },
        ]
    }

    /// Everything `warren cost` prints: the study's tables from this catalog.
    pub fn report(&self, jpy_price: f64, example_concurrency: u32) -> String {
        let mut o = String::new();
        let yen = |v: f64| group_thousands(v.round() as i64);
        let _ = writeln!(o, "## Prices (per workspace-hour; month = {} h)\n", self.billable_hours_per_month);
        let _ = writeln!(o, "| class | price | per month | position |\n|---|---|---|---|");
        for r in self.price_table() {
            let _ =
                writeln!(o, "| {} | ¥{}/hr | ¥{} | {} |", r.class, r.jpy_per_hour, yen(r.jpy_per_month), r.position);
        }

        let _ =
            writeln!(o, "\n## Cost per workspace-hour and gross margin at ¥{jpy_price} (¥{}/$)\n", self.jpy_per_usd);
        let _ = writeln!(
            o,
            "| setup | per workspace | study quotes | margin (quoted) | derived | margin (derived) |\n|---|---|---|---|---|---|"
        );
        let rows = self.hour_table(jpy_price);
        for (r, s) in rows.iter().zip(&self.setups) {
            let basis = match s.pricing {
                crate::Pricing::Instance => format!(
                    "{} x{} on {} (${}/h{})",
                    fmt_shape(s),
                    s.per_instance(),
                    s.instance,
                    s.usd_per_hour,
                    if s.discount > 0.0 { format!(" -{:.0}%", s.discount * 100.0) } else { String::new() }
                ),
                crate::Pricing::Resource => format!("{} per vCPU/GiB-hour", fmt_shape(s)),
            };
            let quoted = match (r.quoted_usd, r.quoted_jpy) {
                (Some(u), Some(j)) => format!("¥{j:.2} (~${u})"),
                _ => "-".into(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | ¥{:.2} (${:.6}){} | {} |",
                r.name,
                basis,
                quoted,
                r.quoted_margin_pct.map(pct).unwrap_or_else(|| "-".into()),
                r.derived_jpy,
                r.derived_usd,
                if r.disagrees { " **≠**" } else { "" },
                pct(r.derived_margin_pct)
            );
        }

        let _ = writeln!(o, "\n## Gross margin at each price (derived cost)\n");
        let _ = write!(o, "| setup |");
        for c in &self.classes {
            let _ = write!(o, " ¥{}/hr ({}) |", c.jpy_per_hour, c.name);
        }
        let _ = writeln!(o, "\n|---|{}", "---|".repeat(self.classes.len()));
        for (s, row) in self.setups.iter().zip(self.margin_table()) {
            let _ = write!(o, "| {} |", s.name);
            for m in row {
                let _ = write!(o, " {} |", pct(m));
            }
            let _ = writeln!(o);
        }

        let _ = writeln!(o, "\n## Monthly cost by concurrent workspaces (24/7, {} h)\n", self.hours_per_month);
        let _ = write!(o, "| concurrent |");
        for s in &self.setups {
            let _ = write!(o, " {} |", s.name);
        }
        let _ = writeln!(o, "\n|---|{}", "---|".repeat(self.setups.len()));
        for row in self.month_table() {
            let _ = write!(o, "| {} |", group_thousands(row.concurrency as i64));
            for (_, usd) in &row.usd {
                let _ = write!(o, " ${} |", group_thousands(usd.round() as i64));
            }
            let _ = writeln!(o);
        }

        if let Some(ri) = self.setup("ecs-ec2-ri") {
            let e = self.example(ri, example_concurrency, jpy_price);
            let _ = writeln!(
                o,
                "\n## Example: {} concurrent on {}\n\ncost ${}/month (¥{}) against revenue ¥{jpy_price}/hr x {} x {} h = ¥{} → gross margin {:.1}%",
                e.concurrency,
                ri.name,
                group_thousands(e.monthly_usd.round() as i64),
                yen(e.monthly_jpy),
                e.concurrency,
                self.billable_hours_per_month,
                yen(e.revenue_jpy),
                e.margin_pct
            );
            let _ = writeln!(
                o,
                "(the study compares a 24/7 cost with revenue over {} billed hours, as here)",
                self.billable_hours_per_month
            );
        }

        let _ = writeln!(o, "\n## Decision criteria (figures at {example_concurrency} concurrent)\n");
        let _ = writeln!(o, "| criterion | order |\n|---|---|");
        for c in self.criteria(example_concurrency, jpy_price) {
            let _ = writeln!(o, "| {} | {} |", c.name, c.render());
        }

        let disagreements: Vec<&HourRow> = rows.iter().filter(|r| r.disagrees).collect();
        if !disagreements.is_empty() {
            let _ = writeln!(o, "\n## Where the study disagrees with itself\n");
            let _ = writeln!(
                o,
                "Its per-hour table quotes these figures, but its monthly table ({} h x concurrency) implies the derived ones:\n",
                self.hours_per_month
            );
            for r in disagreements {
                let q = r.quoted_usd.unwrap_or_default();
                let _ = writeln!(
                    o,
                    "- {}: quoted ~${q}/h, monthly table ${:.6}/h ({:+.1}%); margin at ¥{jpy_price}: {} quoted, {} derived",
                    r.name,
                    r.derived_usd,
                    100.0 * (r.derived_usd - q) / q,
                    pct(r.quoted_margin_pct.unwrap_or_default()),
                    pct(r.derived_margin_pct)
                );
            }
        }
        o
    }
}

/// A whole percentage, halves rounded up as the study does (92.5 → 93%).
fn pct(v: f64) -> String {
    format!("{}%", v.round())
}

fn fmt_shape(s: &Setup) -> String {
    format!("{} vCPU/{} GiB", s.workspace.vcpu, s.workspace.memory_gib)
}

fn capitalise(s: &str) -> String {
    match s {
        "gvisor" => "gVisor".into(),
        _ => {
            let mut c = s.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        }
    }
}

/// 1234567 → "1,234,567".
pub fn group_thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> Catalog {
        Catalog::embedded()
    }

    #[test]
    fn price_points_per_month() {
        let got: Vec<(f64, f64)> = cat().price_table().iter().map(|r| (r.jpy_per_hour, r.jpy_per_month)).collect();
        assert_eq!(got, vec![(50.0, 8_800.0), (100.0, 17_600.0), (200.0, 35_200.0)]);
    }

    /// Every cell of the study's monthly table, to the dollar.
    #[test]
    fn monthly_table_matches_the_study_exactly() {
        let c = cat();
        let study: [(u32, [(&str, i64); 5]); 4] = [
            (
                50,
                [
                    ("e2b-pro", 1_825),
                    ("ecs-ec2-od", 807),
                    ("ecs-ec2-ri", 403),
                    ("fargate", 901),
                    ("firecracker-c8i", 330),
                ],
            ),
            (
                100,
                [
                    ("e2b-pro", 3_650),
                    ("ecs-ec2-od", 1_613),
                    ("ecs-ec2-ri", 807),
                    ("fargate", 1_802),
                    ("firecracker-c8i", 660),
                ],
            ),
            (
                500,
                [
                    ("e2b-pro", 18_250),
                    ("ecs-ec2-od", 8_067),
                    ("ecs-ec2-ri", 4_034),
                    ("fargate", 9_010),
                    ("firecracker-c8i", 3_300),
                ],
            ),
            (
                1000,
                [
                    ("e2b-pro", 36_500),
                    ("ecs-ec2-od", 16_134),
                    ("ecs-ec2-ri", 8_067),
                    ("fargate", 18_020),
                    ("firecracker-c8i", 6_600),
                ],
            ),
        ];
        let table = c.month_table();
        for (n, cells) in study {
            let row = table.iter().find(|r| r.concurrency == n).unwrap();
            for (id, want) in cells {
                let got = row.usd.iter().find(|(s, _)| s == id).unwrap().1;
                assert_eq!(got.round() as i64, want, "{id} at {n}: {got}");
            }
        }
    }

    /// The per-hour table: its margins at ¥100 from its own quotes, its yen
    /// within the rounding of one decimal, and the three setups where the
    /// monthly table implies another figure flagged, and only those.
    #[test]
    fn per_hour_table_margins_and_the_disagreement() {
        let c = cat();
        let rows = c.hour_table(100.0);
        let study = [
            ("ecs-ec2-od", 3.7, 96.0, true),
            ("ecs-ec2-ri", 1.9, 98.0, true),
            ("fargate", 4.2, 96.0, true),
            ("e2b-pro", 7.5, 93.0, false),
            ("firecracker-c8i", 1.4, 99.0, false),
            ("firecracker-metal", 1.1, 99.0, false),
        ];
        for (id, yen, margin, disagrees) in study {
            let r = rows.iter().find(|r| r.setup == id).unwrap();
            assert_eq!(r.quoted_margin_pct.unwrap().round(), margin, "{id}");
            assert!((r.quoted_jpy.unwrap() - yen).abs() <= 0.051, "{id}: ¥{:?} vs ¥{yen}", r.quoted_jpy);
            assert_eq!(r.disagrees, disagrees, "{id}: derived {} quoted {:?}", r.derived_usd, r.quoted_usd);
        }
        // The implied figures the study's monthly table rests on.
        let get = |id: &str| rows.iter().find(|r| r.setup == id).unwrap().derived_usd;
        assert!((get("ecs-ec2-od") - 0.02210).abs() < 0.000005);
        assert!((get("ecs-ec2-ri") - 0.01105).abs() < 0.000005);
        assert!((get("fargate") - 0.024685).abs() < 1e-12, "0.5 x 0.04048 + 1 x 0.004445");
        // With the derived ECS on-demand figure the margin is 97%, not 96%.
        let od = rows.iter().find(|r| r.setup == "ecs-ec2-od").unwrap();
        assert_eq!(od.derived_margin_pct.round(), 97.0);
        // Every setup clears 90% at ¥100, the study's conclusion.
        assert!(rows.iter().all(|r| r.derived_margin_pct > 90.0));
    }

    #[test]
    fn margins_at_every_price() {
        let c = cat();
        let t = c.margin_table();
        let e2b = c.setups.iter().position(|s| s.id == "e2b-pro").unwrap();
        // $0.05 x 150 = ¥7.5 against ¥50, ¥100, ¥200.
        assert_eq!(t[e2b].iter().map(|m| (m * 10.0).round() / 10.0).collect::<Vec<_>>(), vec![85.0, 92.5, 96.3]);
        // Every setup is profitable at every price, and more so as the price rises.
        for row in &t {
            assert!(row.windows(2).all(|w| w[0] < w[1]) && row[0] > 80.0, "{row:?}");
        }
        assert!(c.report(100.0, 500).contains("## Gross margin at each price"));
    }

    #[test]
    fn five_hundred_concurrent_example() {
        let c = cat();
        let e = c.example(c.setup("ecs-ec2-ri").unwrap(), 500, 100.0);
        assert_eq!(e.revenue_jpy, 8_800_000.0);
        assert_eq!(e.monthly_usd.round(), 4_034.0); // "≈ $4,000/month"
        assert_eq!(e.margin_pct.round(), 93.0); // "~93% margin"
    }

    #[test]
    fn decision_criteria_orders() {
        let c = cat();
        let crit = c.criteria(500, 100.0);
        let by = |n: &str| crit.iter().find(|c| c.name == n).unwrap().clone();
        let flat = |c: Criterion| c.ids().into_iter().map(|g| g.join("=")).collect::<Vec<_>>().join(" > ");
        assert_eq!(flat(by("can start today")), "ecs-ec2-od > e2b-pro > firecracker-c8i");
        assert_eq!(flat(by("lowest monthly cost")), "firecracker-c8i > ecs-ec2-ri > fargate > e2b-pro");
        assert_eq!(flat(by("lowest operations")), "e2b-pro > fargate > ecs-ec2-od > firecracker-c8i");
        assert_eq!(flat(by("start speed")), "firecracker-c8i > e2b-pro > ecs-ec2-od > fargate");
        assert_eq!(flat(by("isolation strength")), "firecracker-c8i=e2b-pro=fargate > gvisor > container");
        assert_eq!(flat(by("profitability at scale")), "firecracker-c8i > ecs-ec2-ri > fargate > e2b-pro");
        assert_eq!(
            by("start speed").render(),
            "Firecracker (125 ms) > E2B (150 ms) > ECS EC2 (2-5 s) > Fargate (20-60 s)"
        );
        assert_eq!(by("isolation strength").render(), "Firecracker = E2B = Fargate > gVisor > Docker");
    }

    #[test]
    fn report_points_out_the_disagreement() {
        let r = cat().report(100.0, 500);
        assert!(r.contains("Where the study disagrees with itself"), "{r}");
        assert!(r.contains("ECS on EC2 (on-demand): quoted ~$0.025/h, monthly table $0.022102/h"), "{r}");
        assert!(r.contains("| 1,000 |"), "{r}");
        assert!(r.contains("$16,134"), "{r}");
        assert!(!r.contains("E2B Pro: quoted"), "E2B agrees with itself: {r}");
    }

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(8_800_000), "8,800,000");
        assert_eq!(group_thousands(-1234), "-1,234");
    }
}
