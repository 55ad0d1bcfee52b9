//! `profile --plot`: projected latency against weight size, one series per
//! target, one point per scheme, as an SVG (plotters, no font stack: the
//! viewer renders the text).

use plotters::prelude::*;

/// One scheme's point on one target.
#[derive(Debug, Clone)]
pub struct Point {
    pub scheme: String,
    pub weights_mib: f64,
    /// Milliseconds per input (encoders) or per generated token (decoders).
    pub latency_ms: f64,
}

/// One target's points.
#[derive(Debug, Clone)]
pub struct Series {
    pub target: String,
    pub points: Vec<Point>,
}

/// Renders the chart to an SVG document.
pub fn svg(title: &str, y_label: &str, series: &[Series]) -> Result<String, String> {
    let all: Vec<&Point> = series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        return Err("no projected latencies to plot".into());
    }
    let (x_max, y_min, y_max) = all.iter().fold((0f64, f64::MAX, 0f64), |(x, lo, hi), p| {
        (
            x.max(p.weights_mib),
            lo.min(p.latency_ms),
            hi.max(p.latency_ms),
        )
    });
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .right_y_label_area_size(0)
            .build_cartesian_2d(0f64..x_max * 1.1, (y_min * 0.8..y_max * 1.25).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("weights (MiB)")
            .y_desc(y_label)
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut points: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|p| (p.weights_mib, p.latency_ms))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(1)))
                .map_err(|e| e.to_string())?
                .label(s.target.as_str())
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
            chart
                .draw_series(s.points.iter().map(|p| {
                    EmptyElement::at((p.weights_mib, p.latency_ms))
                        + Circle::new((0, 0), 4, color.filled())
                        + Text::new(p.scheme.clone(), (6, -12), ("sans-serif", 11))
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_and_scheme_is_drawn() {
        let series = vec![
            Series {
                target: "rpi5-8gb".into(),
                points: vec![
                    Point {
                        scheme: "Q8_0".into(),
                        weights_mib: 24.0,
                        latency_ms: 30.0,
                    },
                    Point {
                        scheme: "Q4_K_M".into(),
                        weights_mib: 14.0,
                        latency_ms: 20.0,
                    },
                ],
            },
            Series {
                target: "pixel-8".into(),
                points: vec![Point {
                    scheme: "F16".into(),
                    weights_mib: 44.0,
                    latency_ms: 9.0,
                }],
            },
        ];
        let doc = svg("MiniLM", "ms per input", &series).unwrap();
        assert!(doc.starts_with("<svg"));
        for label in [
            "rpi5-8gb",
            "pixel-8",
            "Q8_0",
            "Q4_K_M",
            "F16",
            "weights (MiB)",
        ] {
            assert!(doc.contains(label), "{label} missing");
        }
        assert!(svg("x", "y", &[]).is_err());
    }
}
