import { builder } from './builder.js';
import './metric.js';
import './api-key.js';
import './stats.js';
import './subscription.js';

export const schema = builder.toSchema({ sortSchema: false });
