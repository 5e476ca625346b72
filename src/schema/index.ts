import { builder } from '../builder.js';
import './metric.js';

export const schema = builder.toSchema({ sortSchema: false });
