//! Visualisation: plots (plotters, PNG or SVG by extension), the attribution graph view
//! (GQA merge, crossing-minimising layout, self-contained HTML, DOT, JSON) and token views.
